"""Prometheus metrics through `ray.util.metrics`; Ray exports them on each node's metrics port.

Created lazily, once per process, because a Ray metric belongs to the process that records it.
The list is in docs/metrics.md. Core services record through the `Metrics` Protocol, so unit
tests pass a recorder and the core never needs a Ray process.
"""

from __future__ import annotations

from functools import cache
from typing import Protocol

from ray.util.metrics import Counter, Gauge, Histogram


class Metrics(Protocol):
    """What core services record; `RayMetrics` exports it, tests keep it in memory."""

    def queue_depth(self, state: str, n: int) -> None: ...
    def items_done(self, n: int) -> None: ...
    def items_failed(self, kind: str, n: int) -> None: ...
    def search_seconds(self, route: str, seconds: float) -> None: ...
    def index_repairs(self, n: int) -> None: ...


class RayMetrics:
    """`Metrics` through the Ray metrics below."""

    def queue_depth(self, state: str, n: int) -> None:
        queue_depth().set(n, tags={"state": state})

    def items_done(self, n: int) -> None:
        items_done().inc(n)

    def items_failed(self, kind: str, n: int) -> None:
        items_failed().inc(n, tags={"kind": kind})

    def search_seconds(self, route: str, seconds: float) -> None:
        search_seconds().observe(seconds, tags={"route": route})

    def index_repairs(self, n: int) -> None:
        index_repairs().inc(n)


class ShardMetrics(Protocol):
    """What an IndexShard's space registry records (its shard number is bound by the maker)."""

    def shard_memory(self, held_bytes: int, spaces: int) -> None: ...
    def shard_evictions(self, n: int) -> None: ...
    def index_load_seconds(self, source: str, seconds: float) -> None: ...
    def snapshot_writes(self, n: int) -> None: ...
    def snapshot_rejects(self, reason: str, n: int) -> None: ...


class RayShardMetrics:
    """`ShardMetrics` through the Ray metrics below, tagged with the shard number."""

    def __init__(self, shard: int) -> None:
        self.tags = {"shard": str(shard)}

    def shard_memory(self, held_bytes: int, spaces: int) -> None:
        shard_bytes().set(held_bytes, tags=self.tags)
        shard_spaces().set(spaces, tags=self.tags)

    def shard_evictions(self, n: int) -> None:
        shard_evictions().inc(n, tags=self.tags)

    def index_load_seconds(self, source: str, seconds: float) -> None:
        index_load_seconds().observe(seconds, tags={**self.tags, "source": source})

    def snapshot_writes(self, n: int) -> None:
        snapshot_writes().inc(n, tags=self.tags)

    def snapshot_rejects(self, reason: str, n: int) -> None:
        snapshot_rejects().inc(n, tags={**self.tags, "reason": reason})


_LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
_BATCH_BOUNDS: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@cache
def queue_depth() -> Gauge:
    return Gauge("lumen_queue_depth", "Items per queue state, all users.", tag_keys=("state",))


@cache
def items_done() -> Counter:
    return Counter("lumen_items_done_total", "Items embedded and indexed.")


@cache
def items_failed() -> Counter:
    return Counter(
        "lumen_items_failed_total",
        "Item attempts that failed, by kind (transient, permanent, worker_dead, timeout).",
        tag_keys=("kind",),
    )


@cache
def embed_batch_size() -> Histogram:
    return Histogram(
        "lumen_embed_batch_size", "Images per model forward pass.", boundaries=_BATCH_BOUNDS
    )


@cache
def ocr_photos() -> Counter:
    return Counter(
        "lumen_ocr_photos_total",
        "Photos through OCR's pre-check, by outcome (no_text, words, empty, and the notes"
        " ocr_timeout, ocr_failed, ocr_unavailable, ocr_busy).",
        tag_keys=("outcome",),
    )


@cache
def embed_batch_seconds() -> Histogram:
    return Histogram(
        "lumen_embed_batch_seconds", "Model forward time per batch.", boundaries=_LATENCY_BOUNDS
    )


@cache
def search_seconds() -> Histogram:
    return Histogram(
        "lumen_search_seconds",
        "Search latency inside the ingress, by route.",
        boundaries=_LATENCY_BOUNDS,
        tag_keys=("route",),
    )


@cache
def http_errors() -> Counter:
    return Counter(
        "lumen_http_errors_total",
        "Error responses by status and code.",
        tag_keys=("status", "code"),
    )


@cache
def index_repairs() -> Counter:
    return Counter(
        "lumen_index_repairs_total",
        "Users' index mirrors found behind Redis and rebuilt (lost replies, shard deaths).",
    )


@cache
def shard_bytes() -> Gauge:
    return Gauge(
        "lumen_shard_bytes",
        "Estimated bytes of the users' indexes an IndexShard holds (FAISS + BM25).",
        tag_keys=("shard",),
    )


@cache
def shard_spaces() -> Gauge:
    return Gauge(
        "lumen_shard_spaces", "Users' spaces loaded in an IndexShard.", tag_keys=("shard",)
    )


@cache
def shard_evictions() -> Counter:
    return Counter(
        "lumen_shard_evictions_total",
        "Users' spaces evicted from an IndexShard (memory budget, re-hash, operator).",
        tag_keys=("shard",),
    )


_LOAD_BOUNDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0]


@cache
def index_load_seconds() -> Histogram:
    return Histogram(
        "lumen_index_load_seconds",
        "Time to load a user's space into an IndexShard, by source (snapshot, redis).",
        boundaries=_LOAD_BOUNDS,
        tag_keys=("shard", "source"),
    )


@cache
def snapshot_writes() -> Counter:
    return Counter("lumen_snapshot_writes_total", "Index snapshots written.", tag_keys=("shard",))


@cache
def snapshot_rejects() -> Counter:
    return Counter(
        "lumen_snapshot_rejects_total",
        "Snapshots not used, by reason (stale, corrupt, error): the space was rebuilt from Redis.",
        tag_keys=("shard", "reason"),
    )
