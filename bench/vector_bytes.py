"""Bytes per vector in Redis: the legacy hash (a field per vector) against packed blocks.

Issue 15 asks for at most 1.05x the raw float32 bytes. This starts a private redis-server
(no AOF), stores `--n` vectors of `--dim` float32 for one user in each layout, and reads
`MEMORY USAGE` of the keys holding the vectors (the id maps are the same in both layouts and
reported apart):

- `hash (before)`: the old layout, `HSET vec:{u} id bytes`, as commits wrote it;
- `blocks, commits`: the real path, ENQUEUE -> CLAIM -> COMMIT_VECTORS in chunks of `--batch`;
- `blocks, bulk`: `VectorStore.write_raw` (benchmarks and imports);
- `blocks, migrated`: the legacy hash moved into blocks by the first load (`scan`).

It also times a full load (`scan`) of each layout.

    python bench/vector_bytes.py [--n 100000] [--dim 512] [--batch 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import redis
from common import print_machine, private_redis, table

from lumen.config import Settings
from lumen.keys import VECTOR_BLOCK_IDS
from lumen.storage import Stores
from lumen.storage.queue import NewItem

LIMIT = 1.05


def vectors(n: int, dim: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((n, dim)).astype("<f4")
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return [row.tobytes() for row in m]


def usage(r: redis.Redis, keys: list[str]) -> int:
    return sum(int(r.memory_usage(k, samples=0) or 0) for k in keys)


def block_keys(stores: Stores, user: str) -> list[str]:
    last = int(stores.redis.get(stores.keys.vseq(user)) or 0)
    return [k for k in stores.keys.vblocks(user, last) if stores.redis.exists(k)]


def load_s(stores: Stores, user: str) -> float:
    t0 = time.perf_counter()
    n = sum(len(ids) for ids, _ in stores.vectors.scan(user))
    took = time.perf_counter() - t0
    assert n == stores.vectors.count(user), (n, stores.vectors.count(user))
    return took


def legacy(stores: Stores, user: str, blobs: list[bytes], model: str, dim: int) -> None:
    """The layout before issue 15: one hash field per vector."""
    r, k = stores.redis, stores.keys
    pipe = r.pipeline(transaction=False)
    pipe.hset(k.vinfo(user), mapping={"model": model, "dim": dim})
    for vid, blob in enumerate(blobs, start=1):
        pipe.hset(k.vec(user), str(vid), blob)
        pipe.hset(k.vitem(user), str(vid), f"uploads/{user}/i{vid}.jpg")
        pipe.hset(k.vid(user), f"uploads/{user}/i{vid}.jpg", vid)
        if vid % 5000 == 0:
            pipe.execute()
    pipe.set(k.vseq(user), len(blobs))
    pipe.execute()


def committed(stores: Stores, user: str, blobs: list[bytes], dim: int, batch: int) -> float:
    """The real path; returns the commit rate (vectors/s)."""
    names = [f"uploads/{user}/i{i}.jpg" for i in range(len(blobs))]
    for i in range(0, len(names), 1000):
        stores.queue.enqueue(user, [NewItem(n, f"sha-{n}") for n in names[i : i + 1000]])
    spent = 0.0
    for _ in range(0, len(names), batch):
        got = stores.queue.claim(user, batch, "bench", 3600)
        rows = [(name, blobs[int(name.rsplit("i", 1)[1][:-4])], "") for name in got]
        t0 = time.perf_counter()
        stores.vectors.commit(user, "bench", dim, rows)
        spent += time.perf_counter() - t0
    return len(names) / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    opts = parser.parse_args()
    print_machine()
    blobs = vectors(opts.n, opts.dim)
    raw = opts.n * opts.dim * 4
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as folder:
        proc, port = private_redis(["--appendonly", "no"], Path(folder))
        try:
            url = f"redis://127.0.0.1:{port}/0"
            stores = Stores(Settings(redis={"url": url, "namespace": "vb"}))
            r, k = stores.redis, stores.keys

            def measure(layout: str, user: str, keys: list[str], note: str = "") -> None:
                held = usage(r, keys)
                maps = usage(r, [k.vitem(user), k.vid(user)]) / opts.n
                took = load_s(stores, user)
                ratio = held / raw
                rows.append(
                    [layout, len(keys), f"{held / opts.n:,.0f}", f"{ratio:.3f}",
                     "yes" if ratio <= LIMIT else "NO", f"{maps:,.0f}", f"{took:.2f}", note]
                )  # fmt: skip

            user = f"h{uuid.uuid4().hex[:6]}"
            legacy(stores, user, blobs, "bench", opts.dim)
            held = usage(r, [k.vec(user)])
            ratio = held / raw
            t0 = time.perf_counter()
            for _ in r.hscan_iter(k.vec(user), count=10_000):  # as the old `scan` read it
                pass
            hash_load_s = time.perf_counter() - t0
            rows.append(
                ["hash (before)", 1, f"{held / opts.n:,.0f}", f"{ratio:.3f}",
                 "yes" if ratio <= LIMIT else "NO",
                 f"{usage(r, [k.vitem(user), k.vid(user)]) / opts.n:,.0f}", f"{hash_load_s:.2f}",
                 "HSET per vector"]
            )  # fmt: skip
            t0 = time.perf_counter()
            stores.vectors.migrate(user, opts.dim)
            moved_s = time.perf_counter() - t0
            measure("blocks, migrated", user, block_keys(stores, user), f"moved in {moved_s:.1f} s")
            stores.queue.reset(user)

            user = f"c{uuid.uuid4().hex[:6]}"
            rate = committed(stores, user, blobs, opts.dim, opts.batch)
            measure("blocks, commits", user, block_keys(stores, user), f"{rate:,.0f} commits/s")
            stores.queue.reset(user)

            user = f"b{uuid.uuid4().hex[:6]}"
            stores.vectors.write_raw(
                user,
                "bench",
                opts.dim,
                [(f"uploads/{user}/i{i}.jpg", b) for i, b in enumerate(blobs)],
            )
            measure("blocks, bulk", user, block_keys(stores, user), "write_raw")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    table(
        f"Vector bytes in Redis: {opts.n:,} vectors of dim {opts.dim} "
        f"({opts.dim * 4:,} B raw each), {VECTOR_BLOCK_IDS} ids per block, limit {LIMIT}x",
        [
            "layout",
            "keys",
            "B/vector",
            "x raw",
            f"<= {LIMIT}",
            "id maps B/vector",
            "load s",
            "note",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
