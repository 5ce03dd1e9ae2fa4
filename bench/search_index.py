"""Benchmark UserIndex: build time, recall@10 against exact search, memory and search latency.

Data is a synthetic stand-in for CLIP embeddings: a two-level Gaussian mixture (centres
grouped around super-centres) with low-rank within-cluster structure plus isotropic noise,
L2-normalised, so a query's nearest neighbour scores ~0.6 and its 10th ~0.4 (broader than
near-duplicate photos, so harder for IVF than a tight mixture). Re-check recall on real
embeddings before lowering nprobe.

    python bench/search_index.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import faiss
import numpy as np

from lumen.config import IndexSettings
from lumen.index import UserIndex, nlist_for

BUILD_LIMIT_S = 30.0
RECALL_TARGET = 0.95
RAW_BYTES_PER_DIM = 4
_CHUNK = 100_000
# Mixture shape: how far centres sit from their super-centre, how wide each cluster's
# 16-dimensional spread is, and the isotropic noise. Tighter values make IVF look better.
_CENTRE_SPREAD = 0.03
_CLUSTER_SPREAD = 0.8
_NOISE = 0.02
_CLUSTER_RANK = 16


def clustered_vectors(n: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    """Return `n` unit vectors drawn from a CLIP-like two-level Gaussian mixture."""
    rng = np.random.default_rng(seed)
    supers = _unit(rng.standard_normal((max(1, centres // 10), dim), dtype=np.float32))
    parents = supers[rng.integers(0, len(supers), centres)]
    means = _unit(parents + _CENTRE_SPREAD * rng.standard_normal((centres, dim), dtype=np.float32))
    shape = (centres, _CLUSTER_RANK, dim)
    bases = rng.standard_normal(shape, dtype=np.float32) * (_CLUSTER_SPREAD / np.sqrt(dim))
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        labels = rng.integers(0, centres, stop - start)
        out[start:stop] = _mixture_chunk(rng, labels, means, bases)
    return out


def _mixture_chunk(rng: np.random.Generator, labels: np.ndarray, means, bases) -> np.ndarray:
    dim = means.shape[1]
    chunk = means[labels] + _NOISE * rng.standard_normal((len(labels), dim), dtype=np.float32)
    for centre in np.unique(labels):
        rows = np.flatnonzero(labels == centre)
        weights = rng.standard_normal((len(rows), bases.shape[1]), dtype=np.float32)
        chunk[rows] += weights @ bases[centre]
    return _unit(chunk)


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def recall_at_k(exact: np.ndarray, approx: list[list[int]], k: int) -> float:
    hits = [
        len(set(truth[:k]) & set(found[:k])) for truth, found in zip(exact, approx, strict=True)
    ]
    return float(np.mean(hits)) / k


def p50_ms(search: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    times = []
    for row in queries:
        start = time.perf_counter()
        search(row[None, :])
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def bench_size(n: int, args: argparse.Namespace) -> list[str]:
    data = clustered_vectors(n + args.queries, args.dim, args.centres)
    base, queries = data[:n], data[n:]
    ids = np.arange(n, dtype=np.int64)
    _, exact = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    index = UserIndex.build(
        args.dim, ids, base, approximate_threshold=args.threshold, nprobe=args.nprobe[0]
    )
    build_s = time.perf_counter() - start
    rows = ivf_rows(index, queries, exact, build_s, args)
    del index
    exact_index = UserIndex.build(args.dim, ids, base, approximate_threshold=n, nprobe=1)
    flat_ms = p50_ms(lambda q: exact_index.search(q, 10), queries[: args.flat_latency_queries])
    rows.append(f"{n:>9} {exact_index.kind:>4} (exact, same vectors): p50 {flat_ms:.2f} ms")
    return rows


def ivf_rows(
    index: UserIndex,
    queries: np.ndarray,
    exact: np.ndarray,
    build_s: float,
    args: argparse.Namespace,
) -> list[str]:
    n = len(index)
    stored = len(faiss.serialize_index(index._index)) / n  # bench only: the on-disk footprint
    rows = []
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        found = [[hit.id for hit in hits] for hits in index.search(queries, 10)]
        latency = p50_ms(lambda q: index.search(q, 10), queries[: args.latency_queries])
        recall = recall_at_k(exact, found, 10)
        rows.append(
            f"{n:>9} {index.kind:>4} {nlist_for(n):>6} {nprobe:>6} {build_s:>8.1f}"
            f" {build_s / BUILD_LIMIT_S:>7.2f} {recall:>7.3f} {recall / RECALL_TARGET:>6.3f}"
            f" {latency:>7.2f} {stored:>8.0f}"
        )
    return rows


def main() -> None:
    defaults = IndexSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--centres", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--flat-latency-queries", type=int, default=30)
    parser.add_argument("--threshold", type=int, default=defaults.approximate_threshold)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[defaults.ivf_nprobe])
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")
    print(
        f"{'n':>9} {'kind':>4} {'nlist':>6} {'nprobe':>6} {'build_s':>8} {'/30s':>7}"
        f" {'rec@10':>7} {'/0.95':>6} {'p50_ms':>7} {'B/vec':>8}"
        f"   (raw float32: {RAW_BYTES_PER_DIM * args.dim} B/vec)"
    )
    for n in args.sizes:
        for row in bench_size(n, args):
            print(row, flush=True)


if __name__ == "__main__":
    main()
