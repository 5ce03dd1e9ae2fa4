"""UserIndex: one user's FAISS index over stable int64 ids, exact when small, IVF when large.

Shapes, by size `n` (`approximate_threshold` and `nprobe` come from `IndexSettings`):

    n <= approximate_threshold   "flat"  IndexIDMap2(IndexFlatIP): exact inner product
    n >  approximate_threshold   "ivf"   IndexIVFFlat(inner product), ids stored in the lists,
                                         a hashtable direct map for O(1) remove and reconstruct

Vectors are L2-normalised, so inner product is cosine similarity. Upsert is idempotent
(an id already present is replaced); removal is real (`len` drops). The IVF is retrained
with a larger `nlist` whenever the index has grown `_RETRAIN_GROWTH` times past the size it
was trained at (amortised O(1) per vector; each retrain blocks the caller for about a
`build`, ~10 s at 1M x 512 on 2 cores), and falls back to flat when it shrinks to half the
threshold.

Not thread-safe: the owner (one actor per shard) serialises calls. FAISS uses OpenMP with
its default thread count (all cores, or OMP_NUM_THREADS, which Ray sets from an actor's
`num_cpus`); builds and batched searches use them, a single-query search uses one.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import NamedTuple

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist

from lumen.vectors import is_normalized, normalize

# nlist = sqrt(n) * _NLIST_PER_SQRT_N, within [1, _MAX_NLIST] and at most n / _MIN_POINTS_PER_LIST
# so k-means has enough points per centroid. Adding costs n * nlist * dim, which is what bounds
# nlist on a small CPU: at 1M x 512, 2 * sqrt(n) lists doubled build time and needed nprobe 64
# for the recall that sqrt(n) lists reach at nprobe 32 (bench/search_index.py).
_NLIST_PER_SQRT_N = 1.0
_MAX_NLIST = 16_384
_MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per centroid
_TRAIN_POINTS_PER_LIST = 64
_MAX_TRAIN_POINTS = 100_000
_KMEANS_ITERATIONS = 10
_TRAIN_SEED = 1234
_RETRAIN_GROWTH = 4


class IndexKind(StrEnum):
    """Which FAISS structure backs a UserIndex."""

    FLAT = "flat"
    IVF = "ivf"


class Hit(NamedTuple):
    """One search result: the item id and its cosine similarity to the query."""

    id: int
    score: float


def nlist_for(n: int) -> int:
    """Return the number of IVF lists for an index of `n` vectors."""
    by_size = round(_NLIST_PER_SQRT_N * math.sqrt(n))
    return max(1, min(by_size, _MAX_NLIST, n // _MIN_POINTS_PER_LIST))


class UserIndex:
    """One user's vectors, searchable by cosine similarity, addressed by int64 ids."""

    def __init__(self, dim: int, *, approximate_threshold: int, nprobe: int) -> None:
        if dim <= 0:
            raise ValueError(f"dimension must be positive, got {dim}")
        self._dim = dim
        self._threshold = approximate_threshold
        self._nprobe = nprobe
        self._index: faiss.IndexIDMap2 | faiss.IndexIVFFlat = _new_flat(dim)
        self._kind = IndexKind.FLAT
        self._trained_at = 0
        # The largest id ever held (None: not known yet, e.g. an index read from a snapshot).
        # Ids are handed out in increasing order, so a commit's ids are nearly always above
        # it and `upsert` skips the removal scan, which visits every stored id of a flat map.
        self._max_id: int | None = -1

    @classmethod
    def build(
        cls,
        dim: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        approximate_threshold: int,
        nprobe: int,
    ) -> UserIndex:
        """Return an index holding `vectors` under `ids`, of the right kind for their count."""
        index = cls(dim, approximate_threshold=approximate_threshold, nprobe=nprobe)
        ids, vectors = index._checked(ids, vectors)
        index._load(ids, vectors)
        return index

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> IndexKind:
        return self._kind

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        """Change how many IVF lists a search visits (a runtime knob; no rebuild)."""
        if value <= 0:
            raise ValueError(f"nprobe must be positive, got {value}")
        self._nprobe = value
        if isinstance(self._index, faiss.IndexIVF):
            self._index.nprobe = value

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Store `vectors` under `ids`, replacing any already present (the last of repeats wins)."""
        ids, vectors = self._checked(ids, vectors)
        if len(ids) == 0:
            return
        if int(ids.min()) <= self._largest_id():
            self._remove_present(ids)
        self._index.add_with_ids(vectors, ids)
        self._max_id = max(self._largest_id(), int(ids.max()))
        self._reshape_if_needed()

    def remove(self, ids: np.ndarray) -> int:
        """Remove `ids` (absent ones are ignored); return how many were removed."""
        wanted = _checked_ids(ids)
        removed = self._remove_present(np.unique(wanted))
        self._reshape_if_needed()
        return removed

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Return, per query row, up to `k` hits, most similar first."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        matrix = _unit_rows(self._checked_matrix(queries, "queries"))
        if len(self) == 0:
            return [[] for _ in range(len(matrix))]
        scores, found = self._index.search(matrix, min(k, len(self)))
        return [
            _hits(row_scores, row_ids) for row_scores, row_ids in zip(scores, found, strict=True)
        ]

    def ids(self) -> np.ndarray:
        """Return every id present, as int64 (in no particular order)."""
        if isinstance(self._index, faiss.IndexIVF):
            return _ivf_contents(self._index)[0]
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def contains(self, item_id: int) -> bool:
        """Whether `item_id` is present."""
        try:
            self._index.reconstruct(int(item_id))
        except RuntimeError:  # FAISS raises "key not found" from both id maps
            return False
        return True

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Return `(ids, vectors)` for everything stored, row-aligned."""
        if isinstance(self._index, faiss.IndexIVF):
            return _ivf_contents(self._index)
        flat = faiss.downcast_index(self._index.index)
        return self.ids(), flat.reconstruct_n(0, len(self))

    def _checked(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        checked_ids = _checked_ids(ids)
        matrix = self._checked_matrix(vectors, "vectors")
        if len(checked_ids) != len(matrix):
            raise ValueError(f"got {len(checked_ids)} ids for {len(matrix)} vectors")
        if not np.isfinite(matrix).all():
            raise ValueError("vectors contain NaN or infinity")
        checked_ids, matrix = _last_of_repeats(checked_ids, matrix)
        return checked_ids, _unit_rows(matrix)

    def _checked_matrix(self, array: np.ndarray, what: str) -> np.ndarray:
        matrix = np.asarray(array, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] != self._dim:
            got = matrix.shape[-1] if matrix.ndim else 0
            raise ValueError(
                f"{what} have dimension {got} (shape {matrix.shape}); this index expects"
                f" {self._dim}: embed them with the same model the index was built with"
            )
        return np.ascontiguousarray(matrix)

    def _largest_id(self) -> int:
        """An upper bound of the ids present (-1 when empty), read from FAISS once if unknown."""
        if self._max_id is None:
            held = self.ids()
            self._max_id = int(held.max()) if len(held) else -1
        return self._max_id

    def _remove_present(self, ids: np.ndarray) -> int:
        if len(self) == 0:
            return 0
        selector: faiss.IDSelector
        if isinstance(self._index, faiss.IndexIVF):
            # The hashtable direct map removes an IDSelectorArray in O(len(ids)).
            selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
        else:
            # The flat id map tests every stored id for membership: a hashed batch is O(1) each.
            selector = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
        return int(self._index.remove_ids(selector))

    def _reshape_if_needed(self) -> None:
        n = len(self)
        grown = self._kind is IndexKind.IVF and n >= _RETRAIN_GROWTH * self._trained_at
        crossed_up = self._kind is IndexKind.FLAT and n > self._threshold
        crossed_down = self._kind is IndexKind.IVF and n <= self._threshold // 2
        if grown or crossed_up or crossed_down:
            self._load(*self.vectors())

    def _load(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) > self._threshold:
            self._index = _new_ivf(vectors, nlist_for(len(ids)), self._nprobe)
            self._kind = IndexKind.IVF
            self._trained_at = len(ids)
        else:
            self._index = _new_flat(self._dim)
            self._kind = IndexKind.FLAT
            self._trained_at = 0
        if len(ids):
            self._index.add_with_ids(vectors, ids)
        self._max_id = int(ids.max()) if len(ids) else -1


def _new_flat(dim: int) -> faiss.IndexIDMap2:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _new_ivf(training: np.ndarray, nlist: int, nprobe: int) -> faiss.IndexIVFFlat:
    dim = training.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = _KMEANS_ITERATIONS
    ivf.cp.seed = _TRAIN_SEED
    ivf.train(_training_sample(training, nlist))
    # O(1) remove_ids and reconstruct by id (the stubs lack DirectMap).
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    ivf.nprobe = nprobe
    return ivf


def _training_sample(vectors: np.ndarray, nlist: int) -> np.ndarray:
    size = min(len(vectors), _TRAIN_POINTS_PER_LIST * nlist, _MAX_TRAIN_POINTS)
    if size == len(vectors):
        return vectors
    rows = np.random.default_rng(_TRAIN_SEED).choice(len(vectors), size, replace=False)
    return vectors[np.sort(rows)]


def _ivf_contents(ivf: faiss.IndexIVF) -> tuple[np.ndarray, np.ndarray]:
    invlists = ivf.invlists
    if invlists is None:
        raise RuntimeError("IVF index has no inverted lists")
    id_parts, vector_parts = [], []
    for list_no in range(ivf.nlist):
        if invlists.list_size(list_no) == 0:
            continue
        list_ids, codes = get_invlist(invlists, list_no)
        id_parts.append(list_ids)
        vector_parts.append(codes.view(np.float32).reshape(len(list_ids), ivf.d))
    if not id_parts:
        return np.empty(0, np.int64), np.empty((0, ivf.d), np.float32)
    return np.concatenate(id_parts).astype(np.int64), np.concatenate(vector_parts)


def _checked_ids(ids: np.ndarray) -> np.ndarray:
    array = np.asarray(ids)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array.reshape(-1), dtype=np.int64)
    if array.size and array.min() < 0:
        raise ValueError("ids must be non-negative (FAISS uses -1 for 'no result')")
    return array


def _last_of_repeats(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, first_in_reversed = np.unique(ids[::-1], return_index=True)
    if len(unique) == len(ids):
        return ids, vectors
    keep = np.sort(len(ids) - 1 - first_in_reversed)
    return ids[keep], vectors[keep]


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix if is_normalized(matrix) else normalize(matrix)


def _hits(scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
    return [Hit(int(i), float(s)) for s, i in zip(scores, ids, strict=True) if i != -1]
