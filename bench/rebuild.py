"""Shard memory and snapshots: cold loads from a snapshot vs rebuilds from Redis, bytes per
vector, and eviction under a memory budget, side by side in one run.

No Serve app: a private redis-server (no AOF) and a local Ray holding IndexShard actors,
which is all a cold load touches. Per size `n` (dim 512, CLIP-like clustered unit vectors,
written straight into the vector store with `VectorStore.write_raw`):

    rebuild    the shard's first `size()` of the user: read every vector from Redis, build
               flat/IVF (the path a restarted shard took before snapshots)
    write      `snapshot()`: `faiss.write_index` + trailer + fsync + rename
    snapshot   evict, then `size()` again: the space comes back from its snapshot (best of 3
               with the file in the page cache, then once after `posix_fadvise(DONTNEED)`
               dropped it); `bare` is `faiss.read_index` of the same file in this process
    same       20 searches before eviction and after the snapshot load: ids and scores equal
    bytes      per vector: Redis (`used_memory` growth over the load), the shard's own
               estimate (what the budget counts), the actor's RSS growth, the snapshot file

Eviction: a shard whose budget holds two 100k spaces loads users A, B, C, then A again;
each step shows bytes held against the budget, what was evicted and where the load came from.

Targets: cold load from a snapshot <= 3 s at 1M.

    python bench/rebuild.py --sizes 100k 1M
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray
import redis
from common import bulk_load, clustered, print_machine, table, temp_redis, verdict
from search import parse_size

from lumen.config import Settings
from lumen.index import nlist_for
from lumen.snapshots import SnapshotStore
from lumen.storage import Stores

DIM = 512
RAW_BYTES = 4 * DIM
SNAPSHOT_LIMIT_S = 3.0  # cold load from a snapshot at 1M
QUERIES = 20
BUDGET_USERS = 100_000
MODEL = "bench-model/512"


@contextlib.contextmanager
def private_cluster() -> Iterator[tuple[Settings, redis.Redis, Path]]:
    """A redis-server and a local Ray of our own; settings pointing at both."""
    from deploy import start_ray

    with temp_redis("lumen-rebuild-", aof=False) as (client, url, tmp):
        settings = Settings(
            data_dir=tmp / "data",
            redis={"url": url, "namespace": f"bench{uuid.uuid4().hex[:6]}"},  # type: ignore[arg-type]
            # nothing automatic: the bench snapshots and evicts by hand
            index={
                "shard_memory_bytes": 0,
                "snapshot_debounce_s": 1e9,
                "snapshot_max_delay_s": 1e9,
            },  # type: ignore[arg-type]
        )
        start_ray(num_cpus=2)
        try:
            yield settings, client, tmp
        finally:
            ray.shutdown()


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def load_vectors(settings: Settings, user: str, vectors: np.ndarray) -> float:
    return bulk_load(Stores(settings).vectors, user, MODEL, vectors)


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget this one file's cached pages (clean after the fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(ref: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = ray.get(ref)
    return value, time.perf_counter() - t0


def rss(shard: Any) -> int:
    pid = ray.get(shard.__ray_call__.remote(lambda self: os.getpid()))
    return int(psutil.Process(pid).memory_info().rss)


def user_stats(shard: Any, user: str) -> dict[str, Any]:
    stats = ray.get(shard.stats.remote(1000))
    return next((u for u in stats["users"] if u["user"] == user), {})


def searches(shard: Any, user: str, queries: np.ndarray) -> list[Any]:
    return [ray.get(shard.search.remote(user, q.astype("<f4").tobytes(), 10)) for q in queries]


def bench_size(settings: Settings, client: redis.Redis, n: int) -> tuple[list[Any], list[Any]]:
    from actors.index_shard import get_index_shard

    data = clustered(n)
    user = f"rebuild{n}"
    before = used_memory(client)
    load_s = load_vectors(settings, user, data)
    redis_b = (used_memory(client) - before) / n
    rng = np.random.default_rng(1)
    queries = np.asarray(data[rng.choice(n, QUERIES, replace=False)]) + 0.05 * rng.standard_normal(
        (QUERIES, DIM), dtype=np.float32
    )
    del data

    shard = get_index_shard(settings.model_copy(update={"app_name": f"bench{n}"}), 0)
    rss0 = rss(shard)
    size, rebuild_s = timed(shard.size.remote(user))
    assert size == n, f"the shard holds {size} vectors, expected {n}"
    rss_b = (rss(shard) - rss0) / n
    held = user_stats(shard, user)
    expected = searches(shard, user, queries)

    written, write_s = timed(shard.snapshot.remote(user))
    assert written, "no snapshot was written"
    store = SnapshotStore(settings.data_dir / "snapshots", settings.redis.namespace)
    [path] = list(store.user_dir(user).iterdir())
    file_b = path.stat().st_size / n

    loads = []
    for _ in range(3):
        ray.get(shard.evict.remote(user))
        size, seconds = timed(shard.size.remote(user))
        assert size == n
        loads.append(seconds)
    snap_s = min(loads)
    # and once with the file out of the page cache (as on a node that never read it)
    ray.get(shard.evict.remote(user))
    drop_from_page_cache(path)
    size, disk_s = timed(shard.size.remote(user))
    assert size == n
    sources = ray.get(shard.stats.remote(0))["loads"]
    assert sources["snapshot"] == 4 and sources["redis"] == 1, sources
    same = searches(shard, user, queries) == expected
    ray.kill(shard)

    import faiss

    bare = []
    for _ in range(3):
        t0 = time.perf_counter()
        index = faiss.read_index(str(path))
        bare.append(time.perf_counter() - t0)
        del index
    bare_s = min(bare)

    at_1m = n >= 1_000_000
    load_row = [
        f"{n:,}",
        held.get("kind", "?"),
        f"{load_s:.0f}",
        f"{rebuild_s:.2f}",
        f"{write_s:.2f}",
        f"{snap_s:.2f}",
        f"{statistics.median(loads):.2f}",
        f"{disk_s:.2f}",
        f"{bare_s:.2f}",
        f"{snap_s / bare_s:.2f}",
        f"{rebuild_s / snap_s:.1f}x",
        f"{snap_s / SNAPSHOT_LIMIT_S:.2f}",
        verdict(snap_s <= SNAPSHOT_LIMIT_S) if at_1m else "(target at 1M)",
        "yes" if same else "NO",
    ]
    bytes_row = [
        f"{n:,}",
        f"{redis_b:.0f}",
        f"{redis_b / RAW_BYTES:.2f}",
        f"{held.get('bytes', 0) / n:.0f}",
        f"{held.get('bytes', 0) / n / RAW_BYTES:.2f}",
        f"{rss_b:.0f}",
        f"{rss_b / RAW_BYTES:.2f}",
        f"{file_b:.0f}",
    ]
    return load_row, bytes_row


def bench_eviction(settings: Settings) -> tuple[list[Any], int]:
    """Users A, B, C of 100k each, then A again, in a shard whose budget holds two."""
    from actors.index_shard import get_index_shard

    n = BUDGET_USERS
    per_space = n * (4 * DIM + 48) + nlist_for(n) * DIM * 4  # the shard's own estimate
    budget = int(2.5 * per_space)
    users = {name: f"evict{name}{uuid.uuid4().hex[:4]}" for name in "ABC"}
    for seed, user in enumerate(users.values()):
        load_vectors(settings, user, clustered(n, seed=10 + seed))
    index = settings.index.model_copy(
        update={"shard_memory_bytes": budget, "snapshot_min_vectors": 1}
    )
    shard = get_index_shard(settings.model_copy(update={"app_name": "evict", "index": index}), 0)
    rows = []
    for step, name in enumerate(["A", "B", "C", "A"], start=1):
        before = ray.get(shard.stats.remote(0))
        _, seconds = timed(shard.size.remote(users[name]))
        after = ray.get(shard.stats.remote(10))
        loaded = {u["user"] for u in after["users"]}
        source = next(k for k in after["loads"] if after["loads"][k] > before["loads"][k])
        rows.append(
            [
                step,
                name,
                source,
                f"{seconds:.2f}",
                " ".join(sorted(k for k, u in users.items() if u in loaded)),
                after["evictions"] - before["evictions"],
                f"{after['bytes'] / 2**20:.0f}",
                f"{budget / 2**20:.0f}",
                f"{after['bytes'] / budget:.2f}",
                verdict(after["bytes"] <= budget),
            ]
        )
        print(f"# eviction step {step}: {rows[-1]}", flush=True)
    ray.kill(shard)
    return rows, budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["100k", "1M"], type=str)
    parser.add_argument("--no-eviction", action="store_true")
    args = parser.parse_args()
    print_machine()
    load_rows, bytes_rows, eviction_rows = [], [], []
    with private_cluster() as (settings, client, _):
        for n in (parse_size(s) for s in args.sizes):
            load_row, bytes_row = bench_size(settings, client, n)
            load_rows.append(load_row)
            bytes_rows.append(bytes_row)
            print(f"# n={n:,}: {load_row} {bytes_row}", flush=True)
            client.flushdb()
        if not args.no_eviction:
            eviction_rows, _ = bench_eviction(settings)
    table(
        f"Cold load of one user's space: snapshot vs rebuild from Redis (limit"
        f" {SNAPSHOT_LIMIT_S:.0f} s from a snapshot at 1M)",
        [
            "n",
            "kind",
            "bulk load s",
            "rebuild from Redis s",
            "snapshot write s",
            "snapshot load s (best of 3)",
            "median s",
            "not in page cache s",
            "bare read_index s (best of 3)",
            "/bare",
            "rebuild/snapshot",
            f"/{SNAPSHOT_LIMIT_S:.0f}s",
            "target",
            "same results",
        ],
        load_rows,
    )
    table(
        f"Bytes per vector (raw float32 = {RAW_BYTES} B)",
        [
            "n",
            "Redis B (used_memory growth)",
            "/raw",
            "shard estimate B",
            "/raw",
            "actor RSS growth B",
            "/raw",
            "snapshot file B",
        ],
        bytes_rows,
    )
    if eviction_rows:
        table(
            f"Eviction under a budget of two {BUDGET_USERS // 1000}k spaces (LRU; snapshots on"
            " the way out)",
            [
                "step",
                "load",
                "from",
                "s",
                "loaded after",
                "evicted",
                "held MiB",
                "budget MiB",
                "/budget",
                "target",
            ],
            eviction_rows,
        )


if __name__ == "__main__":
    main()
