"""What `appendfsync always` costs: enqueue and commit throughput against `everysec`.

The embedded Redis runs with `appendfsync always`, so an upload answered 200 survives a
`kill -9` of Redis (issue 13). This starts three private redis-servers on this disk (AOF
`always`, AOF `everysec`, no AOF) and times the store operations an ingest makes per item:
the upload's ENQUEUE (in ZIP-sized batches), the dispatcher's CLAIM and the shard's COMMIT.

    python bench/durability.py [--items 20000] [--batch 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from common import print_machine, private_redis, table

from lumen.config import Settings
from lumen.storage import Stores
from lumen.storage.queue import NewItem

MODES = {
    "aof always": ["--appendonly", "yes", "--appendfsync", "always"],
    "aof everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "no aof": ["--appendonly", "no"],
}
VECTOR = bytes(2048)  # one ViT-B-32 vector (512 float32)


def run(port: int, items: int, batch: int) -> dict[str, float]:
    stores = Stores(Settings(redis={"url": f"redis://127.0.0.1:{port}/0", "namespace": "b"}))
    user = f"u{uuid.uuid4().hex[:6]}"
    names = [f"uploads/{user}/i{i}.jpg" for i in range(items)]
    t0 = time.perf_counter()
    for i in range(0, items, batch):
        chunk = [NewItem(n, f"sha{n}", {"kind": "image"}, size=1000) for n in names[i : i + batch]]
        stores.queue.enqueue(user, chunk)
    enqueue_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    claimed: list[str] = []
    while len(claimed) < items:
        claimed += stores.queue.claim(user, 32, "w", timeout_s=600)
    claim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, items, 32):
        rows = [(n, VECTOR, "") for n in claimed[i : i + 32]]
        stores.vectors.commit(user, "m", 512, rows)
    commit_s = time.perf_counter() - t0
    return {
        "enqueue": items / enqueue_s,
        "claim": items / claim_s,
        "commit": items / commit_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100, help="items per upload (enqueue)")
    args = parser.parse_args()
    print_machine()
    results: dict[str, dict[str, float]] = {}
    for mode, flags in MODES.items():
        with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:  # this disk, like data/
            proc, port = private_redis(flags, Path(folder))
            try:
                results[mode] = run(port, args.items, args.batch)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    base = results["aof everysec"]
    rows = [
        [mode, *(f"{r[op]:,.0f}" for op in ("enqueue", "claim", "commit")),
         *(f"{r[op] / base[op]:.2f}" for op in ("enqueue", "claim", "commit"))]
        for mode, r in results.items()
    ]  # fmt: skip
    header = ["mode", "enqueue items/s", "claim items/s", "commit items/s",
              "enqueue vs everysec", "claim vs everysec", "commit vs everysec"]  # fmt: skip
    table(f"store throughput, {args.items} items, {args.batch} per upload", header, rows)
    # The limit, measured in this run: ingest on this box embeds far fewer items per second
    # than the store sustains with `always` (see docs/benchmarks.md); say so plainly.
    slowest = min(results["aof always"].values())
    print(f"# slowest store step with appendfsync always: {slowest:,.0f} items/s")


if __name__ == "__main__":
    main()
