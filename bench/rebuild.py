"""Rebuild and memory: an IndexShard rebuilding a user's index from Redis, and bytes per vector.

Per size `n`, a fresh user gets `n` clustered unit vectors via `VectorStore.write_raw`. Then:

    rebuild   the user's first `size()` call on its IndexShard (the path a restarted shard
              takes: HSCAN the vec hash, decode, build flat/IVF, map items), timed from here;
              then once more inside the actor, split into its steps
    redis     MEMORY USAGE of the vec hash / n (the vector store proper), and of the id maps
    actor     the FAISS index's serialized bytes / n, and the actor's RSS growth / n

Targets: rebuild < 30 s at 1M; bytes per vector <= 1.2x raw float32 (2048 B at dim 512).

    python bench/rebuild.py --sizes 100k 1M
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import psutil
import ray
from common import (
    VIT_B_32,
    Service,
    bulk_load,
    clustered,
    print_machine,
    running_service,
    table,
    verdict,
)
from search import parse_size

from lumen.embedding import model_id_for

REBUILD_LIMIT_S = 30.0
RAW_BYTES = 4 * 512
BYTES_LIMIT = 1.2 * RAW_BYTES
SEARCH_RECALL_QUERIES = 500  # search.py's default: both benches reuse one cached mixture


def _timed_rebuild(self, user: str):  # type: ignore[no-untyped-def]
    """Runs inside the IndexShard (via __ray_call__): its rebuild, step by step, then for real."""
    import time as _time

    import faiss as _faiss
    import numpy as _np

    from lumen.index import UserIndex as _UserIndex
    from lumen.vectors import decode_vectors as _decode

    vectors = self.stores.vectors
    info = vectors.info(user)
    t0 = _time.perf_counter()
    ids, vecs = [], []
    for chunk_ids, blobs in vectors.scan(user):
        ids.append(_np.asarray(chunk_ids, dtype=_np.int64))
        vecs.append(_decode(blobs, info.dim))
    all_ids, all_vecs = _np.concatenate(ids), _np.concatenate(vecs)
    t1 = _time.perf_counter()
    ix = self.registry.settings.index
    index = _UserIndex.build(
        info.dim,
        all_ids,
        all_vecs,
        approximate_threshold=ix.approximate_threshold,
        nprobe=ix.ivf_nprobe,
    )
    t2 = _time.perf_counter()
    vectors.items_for(user, all_ids.tolist())
    t3 = _time.perf_counter()
    del index, all_ids, all_vecs, ids, vecs
    self.registry.drop(user)
    t4 = _time.perf_counter()
    space = self.registry.load(user)
    t5 = _time.perf_counter()
    stored = len(_faiss.serialize_index(space.images._index))
    return {
        "scan_decode_s": t1 - t0,
        "build_s": t2 - t1,
        "items_for_s": t3 - t2,
        "load_s": t5 - t4,
        "index_bytes": stored,
        "kind": str(space.images.kind),
        "omp": _faiss.omp_get_max_threads(),
    }


def memory_usage(svc: Service, key: str) -> int:
    return int(svc.redis.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)


def bench_size(svc: Service, n: int) -> tuple[list[object], list[object]]:
    base = np.asarray(clustered(n + SEARCH_RECALL_QUERIES)[:n])  # search.py's cached file
    user, headers = svc.new_user("rebuild")
    load_s = bulk_load(svc, user, model_id_for(VIT_B_32), base)
    k = svc.keys
    vec_b = memory_usage(svc, k.vec(user)) / n
    maps_b = sum(memory_usage(svc, key) for key in (k.vid(user), k.vitem(user), k.done(user))) / n

    # The shard is created on first use; make it exist without loading this user.
    shard = svc.shard(user)
    pid = ray.get(shard.__ray_call__.remote(lambda self: __import__("os").getpid()))
    proc = psutil.Process(pid)
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    size = ray.get(shard.size.remote(user))
    cold_s = time.perf_counter() - t0
    rss1 = proc.memory_info().rss
    steps = ray.get(shard.__ray_call__.remote(_timed_rebuild, user))
    with svc.client() as c:
        c.post("/reset", headers=headers)
    assert size == n, f"the shard holds {size} vectors, expected {n}"
    index_b = steps["index_bytes"] / n
    rss_b = (rss1 - rss0) / n
    rebuild_row = [
        f"{n:,}",
        steps["kind"],
        steps["omp"],
        f"{cold_s:.1f}",
        f"{cold_s / REBUILD_LIMIT_S:.2f}",
        verdict(cold_s < REBUILD_LIMIT_S) if n >= 1_000_000 else "(target at 1M)",
        f"{steps['load_s']:.1f}",
        f"{steps['scan_decode_s']:.1f}",
        f"{steps['build_s']:.1f}",
        f"{steps['items_for_s']:.1f}",
        f"{load_s:.1f}",
    ]
    memory_row = [
        f"{n:,}",
        f"{vec_b:.0f}",
        f"{vec_b / RAW_BYTES:.2f}",
        verdict(vec_b <= BYTES_LIMIT),
        f"{maps_b:.0f}",
        f"{index_b:.0f}",
        f"{index_b / RAW_BYTES:.2f}",
        verdict(index_b <= BYTES_LIMIT),
        f"{rss_b:.0f}",
    ]
    return rebuild_row, memory_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["100k", "1M"], type=str)
    args = parser.parse_args()
    print_machine()

    def tweak(config: dict[str, object]) -> None:
        from common import set_deployment

        set_deployment(
            config, "Embedder", autoscaling_config={"min_replicas": 1, "max_replicas": 1}
        )

    rebuild_rows, memory_rows = [], []
    with running_service({"model": VIT_B_32.model_dump()}, tweak, aof=False) as svc:
        for n in (parse_size(s) for s in args.sizes):
            r, m = bench_size(svc, n)
            rebuild_rows.append(r)
            memory_rows.append(m)
            print(f"# n={n:,}: {r} {m}", flush=True)
    table(
        f"Rebuild of one user's index from Redis in its IndexShard (limit {REBUILD_LIMIT_S:.0f} s"
        " at 1M)",
        [
            "n",
            "kind",
            "faiss threads",
            "rebuild s (first call)",
            f"/{REBUILD_LIMIT_S:.0f}s",
            "target",
            "again, in actor s",
            "HSCAN+decode s",
            "build s",
            "items_for s",
            "bulk load s",
        ],
        rebuild_rows,
    )
    table(
        f"Bytes per vector (raw float32 = {RAW_BYTES} B; limit 1.2x = {BYTES_LIMIT:.0f} B)",
        [
            "n",
            "redis vec hash B",
            "/raw",
            "target",
            "redis id maps + done B",
            "actor index B",
            "/raw",
            "target",
            "actor RSS growth B",
        ],
        memory_rows,
    )


if __name__ == "__main__":
    main()
