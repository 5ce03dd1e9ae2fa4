"""Users' searchable spaces: FAISS indexes rebuilt from Redis, kept in step with commits."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np

from lumen.config import IndexSettings, Settings
from lumen.errors import ModelMismatch
from lumen.index import UserIndex
from lumen.pdfsearch import BM25Index, page_index, rank_pages
from lumen.search import SearchHit
from lumen.storage import Stores
from lumen.vectors import decode_vectors


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Let FAISS use `n` threads inside the block (Ray gives a 0-CPU actor one)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def new_index(
    dim: int,
    settings: IndexSettings,
    ids: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
) -> UserIndex:
    """An index shaped by `settings`: empty, or built from existing `ids` and `vectors`."""
    shape = {"approximate_threshold": settings.approximate_threshold, "nprobe": settings.ivf_nprobe}
    if ids is None or vectors is None:
        return UserIndex(dim, **shape)
    return UserIndex.build(dim, ids, vectors, **shape)


def is_pdf_page(user: str, item: str) -> bool:
    return item.startswith(f"uploads/{user}/pdfs/")


@dataclass
class Space:
    """One user's vectors: all items, and PDF pages alone for PDF questions."""

    dim: int
    images: UserIndex
    pdf_pages: UserIndex
    bm25: BM25Index | None = None


class SpaceRegistry:
    """The spaces of the users hashed to one shard; Redis is the truth, these are caches."""

    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        on_repair: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.spaces: dict[str, Space] = {}
        self.on_repair = on_repair

    def converge(self, user: str) -> bool:
        """Make the user's mirror hold what Redis holds; True when it had to be repaired.

        Redis counts the user's vectors; a vector is only ever added (commit) or all are
        removed (reset, which also drops the mirror), so a count that differs means the
        mirror missed something (a lost reply, a shard that died mid-commit): rebuild it.
        """
        space = self.spaces.get(user)
        if space is None:
            return False
        stored = self.stores.vectors.count(user)
        mirrored = len(space.images)
        if stored == mirrored:
            return False
        self.spaces.pop(user, None)
        self.load(user)
        if self.on_repair is not None:
            self.on_repair(user, mirrored, stored)
        return True

    def converge_all(self) -> list[str]:
        """`converge` every loaded user; the users that needed a repair."""
        return [user for user in list(self.spaces) if self.converge(user)]

    def load(self, user: str) -> Space | None:
        """The user's space, rebuilt from Redis on first use; None when nothing is indexed."""
        if user in self.spaces:
            return self.spaces[user]
        info = self.stores.vectors.info(user)
        if info is None:
            return None
        all_ids: list[np.ndarray] = []
        all_vecs: list[np.ndarray] = []
        for chunk_ids, blobs in self.stores.vectors.scan(user):
            all_ids.append(np.asarray(chunk_ids, dtype=np.int64))
            all_vecs.append(decode_vectors(blobs, info.dim))
        ids = np.concatenate(all_ids) if all_ids else np.empty(0, dtype=np.int64)
        vecs = np.concatenate(all_vecs) if all_vecs else np.empty((0, info.dim), dtype=np.float32)
        ix = self.settings.index
        with faiss_threads(os.cpu_count() or 1):  # a rebuild may use the whole node briefly
            images = new_index(info.dim, ix, ids, vecs)
        space = Space(dim=info.dim, images=images, pdf_pages=new_index(info.dim, ix))
        pdf_items = self.stores.queue.pdf_items(user)
        pdf_ids = np.array(
            [i for i in self.stores.vectors.ids_for(user, pdf_items) if i is not None],
            dtype=np.int64,
        )
        if len(pdf_ids):
            by_id = np.argsort(ids)
            rows = by_id[np.searchsorted(ids, pdf_ids, sorter=by_id)]
            space.pdf_pages.upsert(pdf_ids, vecs[rows])
        self.spaces[user] = space
        return space

    def add(self, user: str, committed: dict[str, int], vectors: dict[str, np.ndarray]) -> None:
        """Mirror freshly committed vectors (idempotent: an id is replaced, never duplicated)."""
        space = self.load(user)
        if space is None or not committed:
            return
        items = list(committed)
        ids = np.asarray([committed[i] for i in items], dtype=np.int64)
        vecs = np.stack([vectors[i] for i in items]).astype(np.float32)
        space.images.upsert(ids, vecs)
        pdf = np.array([is_pdf_page(user, i) for i in items], dtype=bool)
        if pdf.any():
            space.pdf_pages.upsert(ids[pdf], vecs[pdf])
            space.bm25 = None

    def drop(self, user: str) -> None:
        self.spaces.pop(user, None)

    def search(self, user: str, query: np.ndarray, k: int) -> list[SearchHit]:
        self.converge(user)
        space = self.load(user)
        if space is None or len(space.images) == 0:
            return []
        self._check_dim(user, query)
        hits = space.images.search(query.reshape(1, -1), k)[0]
        return self._hits(user, [(h.id, h.score) for h in hits])

    def search_pdf(
        self, user: str, query_vec: np.ndarray, query: str, k: int, mode: str = "fused"
    ) -> list[SearchHit]:
        """Best PDF pages: `fused` (CLIP + page text), or `text` / `image` alone."""
        self.converge(user)
        space = self.load(user)
        if space is None or len(space.pdf_pages) == 0:
            return []
        self._check_dim(user, query_vec)
        n = len(space.pdf_pages)
        clip_hits = space.pdf_pages.search(query_vec.reshape(1, -1), n)[0]
        items = self.stores.vectors.items_for(user, [h.id for h in clip_hits])
        clip_scores = {it: h.score for it, h in zip(items, clip_hits, strict=True) if it}
        if space.bm25 is None:
            texts = self.stores.queue.pdf_texts(user)
            space.bm25 = page_index(texts, self.stores.queue.meta(user, list(texts)))
        fused = rank_pages(clip_scores, space.bm25, query, mode=mode, k=k)
        return [
            SearchHit(h.item, float(h.clip_similarity or 0.0), "", h.text_score, h.score)
            for h in fused
        ]

    def _check_dim(self, user: str, query: np.ndarray) -> None:
        space = self.spaces.get(user)
        if space is not None and space.dim != query.shape[-1]:
            raise ModelMismatch(
                f"this space was indexed with {space.dim}-dimensional vectors; reset it "
                "(POST /reset) and upload again to search with the current model"
            )

    def _hits(self, user: str, pairs: list[tuple[int, float]]) -> list[SearchHit]:
        described = self.stores.vectors.describe(user, [vid for vid, _ in pairs])
        return [
            SearchHit(item, float(score), caption)
            for (item, caption), (_, score) in zip(described, pairs, strict=True)
            if item
        ]
