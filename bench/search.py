"""Search latency over HTTP (by text, by image) at 1k..1M vectors, against the bare cost.

Per size `n`, one fresh user gets `n` clustered unit vectors (bench/search_index.py's
mixture) written straight into Redis with `VectorStore.write_raw`; the first search makes
the user's IndexShard rebuild its index from Redis, exactly as after a restart. Then, with
requests interleaved so both see the same load:

    http   POST /search (query text, or a 640x480 JPEG) with top_k=10, one at a time
    bare   the same encode (EmbedderCore, torch threads = the replica's) + UserIndex.search
           on an index of the same vectors and settings, in this one process

Target: http p50 <= 1.3x bare p50 at every size. Recall@10 of the service's own index (read
in the actor) against exact search over held-out queries from the mixture: >= 0.95 at 1M.

    python bench/search.py --sizes 1k 100k          # the default
    python bench/search.py --sizes 1M               # ~12 GB RAM peak, ~5 min
"""

from __future__ import annotations

import argparse
import io
import time

import faiss
import httpx
import numpy as np
import ray
import torch
from common import (
    VIT_B_32,
    Service,
    bulk_load,
    clustered,
    one_embedder,
    pct,
    print_machine,
    running_service,
    table,
    threads_of,
    verdict,
)
from PIL import Image
from ray import serve

from lumen.config import Settings
from lumen.embedding import model_id_for
from lumen.index import UserIndex, nlist_for
from lumen.naming import EMBEDDER
from lumen.storage import Stores
from lumen.worker import EmbedderCore

RATIO_TARGET = 1.3
RECALL_TARGET = 0.95
DIM = 512


def parse_size(text: str) -> int:
    text = text.lower().replace("_", "")
    for suffix, mult in (("k", 1_000), ("m", 1_000_000)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * mult)
    return int(text)


def query_images(count: int) -> list[bytes]:
    """Small photo-like JPEGs to search with (what a browser would send)."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(count):
        base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (640, 480), Image.BICUBIC
        )
        pixels = np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (480, 640, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _actor_index_facts(self, user: str, queries: np.ndarray):  # type: ignore[no-untyped-def]
    """Runs inside the IndexShard (via __ray_call__): the index's kind, size and answers."""
    space = self.registry.spaces[user]
    found = [[h.id for h in hits] for hits in space.images.search(queries, 10)]
    return str(space.images.kind), len(space.images), found


def match_faiss_threads(svc: Service) -> None:
    """Give this process's FAISS the IndexShard's OpenMP thread count, and say so."""
    shard = threads_of("IndexShard")
    faiss_threads = int(shard.rsplit(" ", 1)[-1]) if shard[-1].isdigit() else 1
    faiss.omp_set_num_threads(faiss_threads)
    print(
        f"# IndexShard: {shard}; Embedder: {threads_of('Embedder')}; bare: torch"
        f" {torch.get_num_threads()}, faiss {faiss.omp_get_max_threads()}",
        flush=True,
    )


def bench_size(
    svc: Service, core: EmbedderCore, n: int, args: argparse.Namespace, images: list[bytes]
) -> list[list[object]]:
    data = clustered(n + args.recall_queries)
    base, queries = np.asarray(data[:n]), np.asarray(data[n:])
    user, headers = svc.new_user("search")
    load_s = bulk_load(Stores(svc.settings, svc.redis).vectors, user, model_id_for(VIT_B_32), base)
    client = httpx.Client(base_url=svc.url, timeout=600)

    spans: dict[str, list[float]] = {"embed": [], "index": []}

    def http_text(i: int) -> None:
        r = client.post(
            "/search", headers=headers, data={"query": f"a photo of a thing {i}", "top_k": "10"}
        )
        r.raise_for_status()
        for name, ms in server_timing(r.headers.get("server-timing", "")).items():
            spans.setdefault(name, []).append(ms / 1e3)

    def http_image(i: int) -> None:
        files = {"image": ("q.jpg", images[i % len(images)], "image/jpeg")}
        r = client.post("/search", headers=headers, files=files, data={"top_k": "10"})
        r.raise_for_status()

    t0 = time.perf_counter()
    http_text(-1)  # the shard rebuilds this user's index from Redis here
    first_s = time.perf_counter() - t0

    shard = svc.shard(user)
    if n == args.first_size:
        match_faiss_threads(svc)
    kind, size, found = ray.get(shard.__ray_call__.remote(_actor_index_facts, user, queries))
    _, exact = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_ids = exact + 1  # write_raw numbers a fresh user's vectors 1..n
    recall = float(
        np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact_ids, found, strict=True)])
    )

    ix = svc.settings.index
    index = UserIndex.build(
        DIM,
        np.arange(1, n + 1, dtype=np.int64),
        base,
        approximate_threshold=ix.approximate_threshold,
        nprobe=ix.ivf_nprobe,
    )

    def bare_text(i: int) -> None:
        index.search(core.embed_texts([f"a photo of a thing {i}"]), 10)

    def bare_image(i: int) -> None:
        vectors, _ = core.embed_tensors([core.decode_bytes(images[i % len(images)])])
        index.search(vectors, 10)

    embedder = serve.get_deployment_handle(EMBEDDER, svc.settings.app_name)

    def hop_embed(i: int) -> None:  # driver -> Embedder replica, text encode, back
        embedder.embed_text.remote(f"a photo of a thing {i}").result()

    query_bytes = queries[0].astype("<f4").tobytes()

    def hop_index(i: int) -> None:  # driver -> IndexShard actor, search, back
        ray.get(shard.search.remote(user, query_bytes, 10))

    faiss_only = []
    for q in queries[: args.queries]:
        t = time.perf_counter()
        index.search(q[None, :], 10)
        faiss_only.append(time.perf_counter() - t)

    fns = {
        "http_text": http_text,
        "bare_text": bare_text,
        "http_image": http_image,
        "bare_image": bare_image,
        "hop_embed": hop_embed,
        "hop_index": hop_index,
    }
    timings: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(args.warmup):
        for fn in fns.values():
            fn(i)
    for values in spans.values():
        values.clear()
    for i in range(args.queries):  # interleaved: each pair sees the same moment's load
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(i)
            timings[name].append(time.perf_counter() - t)
    client.close()
    with httpx.Client(base_url=svc.url, timeout=600) as c:  # free Redis and the actor
        c.post("/reset", headers=headers)

    rows = []
    for mode in ("text", "image"):
        http, bare = timings[f"http_{mode}"], timings[f"bare_{mode}"]
        ratio = pct(http, 50) / pct(bare, 50)
        rows.append(
            [
                f"{n:,}",
                f"{kind} (nlist {nlist_for(n) if kind == 'ivf' else '-'})",
                mode,
                f"{1e3 * pct(http, 50):.1f}",
                f"{1e3 * pct(http, 99):.1f}",
                f"{1e3 * pct(bare, 50):.1f}",
                f"{1e3 * pct(bare, 99):.1f}",
                f"{1e3 * pct(faiss_only, 50):.2f}",
                f"{ratio:.2f}",
                verdict(ratio <= RATIO_TARGET),
                f"{recall:.3f}",
                f"{first_s:.1f}",
                f"{load_s:.1f}",
            ]
        )
    assert size == n, f"the shard holds {size} vectors, expected {n}"
    ms = {name: 1e3 * pct(values, 50) for name, values in {**timings, **spans}.items()}
    app = ms["embed"] + ms["index"]
    BREAKDOWN.append(
        [
            f"{n:,}",
            f"{ms['http_text']:.1f}",
            f"{ms['http_text'] - app:.1f}",
            f"{ms['embed']:.1f}",
            f"{ms['hop_embed']:.1f}",
            f"{ms['bare_text']:.1f}",
            f"{ms['index']:.1f}",
            f"{ms['hop_index']:.2f}",
            f"{1e3 * pct(faiss_only, 50):.2f}",
        ]
    )
    return rows


BREAKDOWN: list[list[str]] = []


def server_timing(header: str) -> dict[str, float]:
    """`embed;dur=104.2, index;dur=3.1` -> {"embed": 104.2, "index": 3.1} (ms)."""
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["1k", "100k"], type=str, help="e.g. 1k 100k 1M"
    )
    parser.add_argument("--queries", type=int, default=100, help="timed requests per mode")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--recall-queries", type=int, default=500)
    parser.add_argument("--embedder-cpus", type=int, default=1)
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes]
    args.first_size = sizes[0]
    print_machine()
    threads = args.embedder_cpus

    images = query_images(8)
    tweak = one_embedder(threads)
    with running_service({"model": VIT_B_32.model_dump()}, tweak, aof=False) as svc:
        core = EmbedderCore(Settings(model=VIT_B_32), "bare", threads=threads)
        rows = []
        for n in sizes:
            rows += bench_size(svc, core, n, args, images)
            print(f"# n={n:,} done", flush=True)
    table(
        "Search over HTTP vs bare (encode + FAISS in one process), top_k=10, ms",
        [
            "n",
            "index",
            "query",
            "http p50",
            "http p99",
            "bare p50",
            "bare p99",
            "faiss p50",
            "p50 ratio",
            f"<= {RATIO_TARGET}",
            "recall@10",
            "first search s (rebuild)",
            "bulk load s",
        ],
        rows,
    )
    print(f"recall target: >= {RECALL_TARGET} at 1M (the recall column of the 1,000,000 rows)")
    table(
        "Where a text search's time goes (p50 ms): HTTP, and inside the ingress (Server-Timing)",
        [
            "n",
            "http",
            "outside the route (proxy, HTTP, auth)",
            "embed (ingress -> Embedder)",
            "embed (driver -> Embedder)",
            "bare encode + faiss",
            "index (ingress -> shard)",
            "index (driver -> shard)",
            "faiss",
        ],
        BREAKDOWN,
    )


if __name__ == "__main__":
    main()
