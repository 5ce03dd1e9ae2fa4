"""Users' searchable spaces: FAISS indexes rebuilt from Redis, kept in step with commits.

A shard holds its users' spaces within a memory budget (`index.shard_memory_bytes`, an
estimate of FAISS + BM25 bytes): past it the least recently used spaces are evicted, never
the one being served. A space is loaded from its snapshot (lumen.snapshots) when one
matches the user's vector version in Redis, and rebuilt from Redis otherwise; a space that
changed is snapshotted once it has been quiet for `snapshot_debounce_s`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from lumen.config import IndexSettings, Settings
from lumen.errors import ModelMismatch, SpaceSwitched
from lumen.index import IndexKind, UserIndex, nlist_for
from lumen.metrics import ShardMetrics
from lumen.pdfsearch import BM25Index, page_index, rank_pages
from lumen.photosearch import CANDIDATES, fuse_photos, matching_words, relevance, words_index
from lumen.search import SearchHit
from lumen.snapshots import SnapshotRejected, SnapshotStore, Version, read_version, vectors_of
from lumen.storage import Stores
from lumen.vectors import decode_vectors

log = logging.getLogger(__name__)

# Per stored vector besides its floats: the int64 id, and the id -> slot hash entry
# (IndexIDMap2's rev_map, or the IVF's hashtable direct map).
_ID_OVERHEAD_BYTES = 8 + 40
# BM25 postings are Python tuples in dicts: about this much per character of page text.
_BM25_BYTES_PER_CHAR = 10
_BM25_BYTES_PER_PAGE = 300


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


def index_bytes(index: UserIndex) -> int:
    """Estimated memory of a UserIndex: its vectors, ids and id map (and IVF centroids)."""
    n = len(index)
    held = n * (4 * index.dim + _ID_OVERHEAD_BYTES)
    if index.kind is IndexKind.IVF:
        held += nlist_for(n) * index.dim * 4
    return held


def bm25_bytes(pages: Mapping[str, str]) -> int:
    """Estimated memory of a BM25Index over `pages`."""
    chars = sum(len(text or "") for text in pages.values())
    return chars * _BM25_BYTES_PER_CHAR + len(pages) * _BM25_BYTES_PER_PAGE


@dataclass
class Space:
    """One user's vectors: all items, and PDF pages alone for PDF questions; BM25 over PDF
    page texts and over the words OCR read in photos, each built on first use."""

    dim: int
    images: UserIndex
    pdf_pages: UserIndex
    model: str = ""  # the model of the vectors (a switch after an upgrade changes it)
    bm25: BM25Index | None = None
    bm25_bytes: int = 0
    words: BM25Index | None = None
    words_bytes: int = 0
    # When the first change not yet in a snapshot happened, and the latest (monotonic s).
    dirty_since: float | None = None
    changed_at: float = 0.0
    used_at: float = 0.0

    def nbytes(self) -> int:
        held = index_bytes(self.images) + index_bytes(self.pdf_pages)
        return held + self.bm25_bytes + self.words_bytes

    def changed(self, now: float) -> None:
        if self.dirty_since is None:
            self.dirty_since = now
        self.changed_at = now


@dataclass
class ShardCounters:
    """What a registry did since it started (the operator view shows them)."""

    evictions: int = 0
    loads: dict[str, int] = field(default_factory=lambda: {"snapshot": 0, "redis": 0})
    snapshot_writes: int = 0
    snapshot_rejects: dict[str, int] = field(default_factory=dict)


class SpaceRegistry:
    """The spaces of the users hashed to one shard; Redis is the truth, these are caches.

    `spaces` is kept in least-recently-used order (oldest first). Without a snapshot store
    every cold space is rebuilt from Redis.
    """

    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        on_repair: Callable[[str, int, int], None] | None = None,
        *,
        snapshots: SnapshotStore | None = None,
        metrics: ShardMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.spaces: OrderedDict[str, Space] = OrderedDict()
        self.on_repair = on_repair
        self.snapshots = snapshots
        self.metrics = metrics
        self.clock = clock
        self.counters = ShardCounters()
        # Every loaded space's size as last counted, and their sum: kept on each change, so
        # a commit costs O(1) here, not a pass over every loaded space.
        self._sizes: dict[str, int] = {}
        self._held = 0

    def _resized(self, user: str) -> None:
        """Count `user`'s space again (after it changed, was loaded, or went)."""
        space = self.spaces.get(user)
        size = space.nbytes() if space is not None else 0
        self._held += size - self._sizes.pop(user, 0)
        if space is not None:
            self._sizes[user] = size

    def _forget(self, user: str) -> None:
        self.spaces.pop(user, None)
        self._resized(user)

    def converge(self, user: str) -> bool:
        """Make the user's mirror hold what Redis holds; True when it had to be repaired.

        Redis counts the user's vectors; a vector is only ever added (commit) or all are
        removed (reset, which also drops the mirror), so a count that differs means the
        mirror missed something (a lost reply, a shard that died mid-commit): rebuild it.
        A space whose model changed (the switch after an upgrade) is rebuilt too.
        """
        space = self.spaces.get(user)
        if space is None:
            return False
        stored = self.stores.vectors.count(user)
        mirrored = len(space.images)
        info = self.stores.vectors.info(user)
        if info is not None and info.model != space.model:
            self._forget(user)
            self.load(user)
            return False  # not a repair: the space moved to another model
        if stored == mirrored:
            return False
        self._forget(user)
        self.load(user)
        if self.on_repair is not None:
            self.on_repair(user, mirrored, stored)
        return True

    def converge_all(self) -> list[str]:
        """`converge` every loaded user; the users that needed a repair."""
        return [user for user in list(self.spaces) if self.converge(user)]

    def load(self, user: str) -> Space | None:
        """The user's space: loaded on first use (snapshot, or rebuilt from Redis); None when
        nothing is indexed. Loading may evict other users' spaces to stay within budget."""
        now = self.clock()
        space = self.spaces.get(user)
        if space is not None:
            self.spaces.move_to_end(user)
            space.used_at = now
            return space
        version = read_version(self.stores.vectors, user)
        if version is None:
            return None
        # Make room first, so the shard never holds more than the budget plus this space.
        self._enforce_budget(
            keep=user, incoming=version.count * (4 * version.dim + _ID_OVERHEAD_BYTES)
        )
        t0 = time.perf_counter()
        pdf_ids = self._pdf_ids(user)
        images = self._from_snapshot(user, version)
        pdf_vecs: np.ndarray | None = None
        if images is not None and len(pdf_ids):
            try:
                pdf_vecs = vectors_of(images, pdf_ids)
            except RuntimeError:  # a PDF page the snapshot lacks: it is not this version
                self._rejected("corrupt")
                if self.snapshots is not None:
                    self.snapshots.remove(user)
                images = None
        source = "snapshot" if images is not None else "redis"
        if images is None:
            ids, vecs = self._scan(user, version.dim)
            with faiss_threads(os.cpu_count() or 1):  # a rebuild may use the whole node briefly
                images = new_index(version.dim, self.settings.index, ids, vecs)
            if len(pdf_ids):
                by_id = np.argsort(ids)
                pdf_vecs = vecs[by_id[np.searchsorted(ids, pdf_ids, sorter=by_id)]]
            del ids, vecs
        space = Space(
            dim=version.dim,
            images=images,
            pdf_pages=new_index(version.dim, self.settings.index),
            model=version.model,
        )
        space.used_at = now
        if pdf_vecs is not None:
            space.pdf_pages.upsert(pdf_ids, pdf_vecs)
        if source == "redis" and self._worth_a_snapshot(len(images)):
            space.changed(now)  # snapshot it once it has been quiet
        self.spaces[user] = space
        self._resized(user)
        self.counters.loads[source] += 1
        if self.metrics is not None:
            self.metrics.index_load_seconds(source, time.perf_counter() - t0)
        self._enforce_budget(keep=user)
        return space

    def _scan(self, user: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        all_ids: list[np.ndarray] = []
        all_vecs: list[np.ndarray] = []
        for chunk_ids, blobs in self.stores.vectors.scan(user):
            all_ids.append(np.asarray(chunk_ids, dtype=np.int64))
            all_vecs.append(decode_vectors(blobs, dim))
        ids = np.concatenate(all_ids) if all_ids else np.empty(0, dtype=np.int64)
        vecs = np.concatenate(all_vecs) if all_vecs else np.empty((0, dim), dtype=np.float32)
        return ids, vecs

    def _pdf_ids(self, user: str) -> np.ndarray:
        pdf_items = self.stores.queue.pdf_items(user)
        return np.array(
            [i for i in self.stores.vectors.ids_for(user, pdf_items) if i is not None],
            dtype=np.int64,
        )

    def _from_snapshot(self, user: str, version: Version) -> UserIndex | None:
        if self.snapshots is None:
            return None
        try:
            return self.snapshots.load(user, version, self.settings.index)
        except SnapshotRejected as exc:
            self._rejected(exc.reason)
            log.warning("snapshot of a space not used (%s); rebuilding from Redis", exc)
        except Exception:  # noqa: BLE001 - a cache: anything wrong means rebuild
            self._rejected("error")
            log.exception("snapshot of a space could not be read; rebuilding from Redis")
        return None

    def _rejected(self, reason: str) -> None:
        rejects = self.counters.snapshot_rejects
        rejects[reason] = rejects.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.snapshot_rejects(reason, 1)

    def _worth_a_snapshot(self, n: int) -> bool:
        return self.snapshots is not None and n >= max(1, self.settings.index.snapshot_min_vectors)

    def add(
        self,
        user: str,
        committed: dict[str, int],
        vectors: dict[str, np.ndarray],
        model: str | None = None,
        words: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Mirror freshly committed vectors (idempotent: an id is replaced, never duplicated);
        `words`: items committed with OCR words (the words index is rebuilt on next use).

        Vectors of another model than the mirror's (committed just after a switch) mean
        the mirror is of the old space: it is rebuilt from Redis, which holds them already.
        """
        space = self.spaces.get(user)
        if space is not None and model is not None and space.model != model:
            self._forget(user)
        space = self.load(user)
        if space is not None and words:  # the words are the item's: whichever model's vectors
            space.words = None
            space.words_bytes = 0
            self._resized(user)
        if space is None or not committed or (model is not None and space.model != model):
            return
        items = list(committed)
        ids = np.asarray([committed[i] for i in items], dtype=np.int64)
        vecs = np.stack([vectors[i] for i in items]).astype(np.float32)
        space.images.upsert(ids, vecs)
        pdf = np.array([is_pdf_page(user, i) for i in items], dtype=bool)
        if pdf.any():
            space.pdf_pages.upsert(ids[pdf], vecs[pdf])
            space.bm25 = None
            space.bm25_bytes = 0
        if self._worth_a_snapshot(len(space.images)):
            space.changed(self.clock())
        self._resized(user)
        self._enforce_budget(keep=user)

    def drop(self, user: str) -> None:
        """Forget the user's space and its snapshot (their space was reset in Redis)."""
        self._forget(user)
        if self.snapshots is not None:
            self.snapshots.remove(user)
        self._publish()

    def evict(self, user: str) -> bool:
        """Free the user's space (snapshotted first if it changed); False if not loaded."""
        space = self.spaces.get(user)
        if space is None:
            return False
        if space.dirty_since is not None:
            self._save(user, space)
        self._forget(user)
        self.counters.evictions += 1
        if self.metrics is not None:
            self.metrics.shard_evictions(1)
        self._publish()
        return True

    def release_unowned(self, owns: Callable[[str], bool]) -> list[str]:
        """Evict the spaces of users this shard no longer owns (the shard count changed)."""
        gone = [user for user in list(self.spaces) if not owns(user)]
        for user in gone:
            self.evict(user)
        return gone

    def held_bytes(self) -> int:
        """The loaded spaces' estimated bytes (a running total: O(1))."""
        return self._held

    def _enforce_budget(self, keep: str, incoming: int = 0) -> None:
        """Evict least recently used spaces but `keep` while over the memory budget (with
        `incoming` more bytes about to be loaded)."""
        budget = self.settings.index.shard_memory_bytes
        if budget > 0:
            held = self.held_bytes() + incoming
            for user in list(self.spaces) if held > budget else []:
                if held <= budget:
                    break
                if user != keep:
                    held -= self.spaces[user].nbytes()
                    self.evict(user)
        self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.shard_memory(self.held_bytes(), len(self.spaces))

    def flush(self, force: bool = False) -> int:
        """Snapshot the spaces that changed and have been quiet long enough (all, if `force`).

        Quiet: no change for `snapshot_debounce_s`, or changing for `snapshot_max_delay_s`
        (a steady stream of commits still gets a snapshot now and then).
        """
        if self.snapshots is None:
            return 0
        now = self.clock()
        ix = self.settings.index
        written = 0
        for user, space in list(self.spaces.items()):
            if space.dirty_since is None:
                continue
            quiet = now - space.changed_at >= ix.snapshot_debounce_s
            overdue = now - space.dirty_since >= ix.snapshot_max_delay_s
            if force or quiet or overdue:
                written += self._save(user, space)
        return written

    def snapshot(self, user: str) -> bool:
        """Write the user's snapshot now, whatever its size or age (operators, tests)."""
        space = self.spaces.get(user)
        return space is not None and self._save(user, space, any_size=True)

    def _save(self, user: str, space: Space, any_size: bool = False) -> bool:
        """Write the space's snapshot at Redis's current version; True when written.

        A mirror that does not match Redis's count is not written (convergence rebuilds it).
        """
        if self.snapshots is None:
            return False
        version = read_version(self.stores.vectors, user)
        if (
            version is None
            or version.count != len(space.images)
            or version.dim != space.dim
            or not (any_size or self._worth_a_snapshot(version.count))
        ):
            space.dirty_since = None
            return False
        try:
            written = self.snapshots.save(user, version, space.images)
        except OSError:
            log.exception("could not write a snapshot; trying again later")
            space.changed_at = self.clock()  # try again after another quiet period
            return False
        space.dirty_since = None
        if written:
            self.counters.snapshot_writes += 1
            if self.metrics is not None:
                self.metrics.snapshot_writes(1)
        return bool(written)

    def stats(self, top: int = 20) -> dict[str, Any]:
        """Memory, spaces, counters, and the `top` largest spaces (for operators)."""
        now = self.clock()
        largest = sorted(self.spaces.items(), key=lambda kv: kv[1].nbytes(), reverse=True)
        return {
            "bytes": self.held_bytes(),
            "budget_bytes": self.settings.index.shard_memory_bytes,
            "spaces": len(self.spaces),
            "evictions": self.counters.evictions,
            "loads": dict(self.counters.loads),
            "snapshot_writes": self.counters.snapshot_writes,
            "snapshot_rejects": dict(self.counters.snapshot_rejects),
            "users": [
                {
                    "user": user,
                    "vectors": len(space.images),
                    "bytes": space.nbytes(),
                    "kind": str(space.images.kind),
                    "idle_s": round(now - space.used_at, 1),
                    "snapshot_pending": space.dirty_since is not None,
                }
                for user, space in largest[:top]
            ],
        }

    def search(
        self,
        user: str,
        query: np.ndarray,
        k: int,
        model: str | None = None,
        text: str | None = None,
    ) -> list[SearchHit]:
        """The `k` items nearest `query`, a vector of `model` (checked against the space's
        model); with the query's `text`, fused with the words OCR read in photos
        (lumen.photosearch: the words are the item's, the same whichever model is active)."""
        self.converge(user)
        space = self.load(user)
        if space is None or len(space.images) == 0:
            return []
        self._check_model(space, model)
        self._check_dim(user, query)
        matched = relevance(self._words(user, space), text) if text else {}
        if not matched:
            hits = space.images.search(query.reshape(1, -1), k)[0]
            return self._hits(user, [(h.id, h.score) for h in hits])
        return self._fused(user, space, query, text or "", matched, k)

    def _words(self, user: str, space: Space) -> BM25Index:
        if space.words is None:
            words = self.stores.vectors.ocr_words(user)
            space.words = words_index(words)
            space.words_bytes = bm25_bytes(words)
            self._resized(user)
            self._enforce_budget(keep=user)
        return space.words

    def _fused(
        self,
        user: str,
        space: Space,
        query: np.ndarray,
        text: str,
        relevance: dict[str, float],
        k: int,
    ) -> list[SearchHit]:
        depth = min(len(space.images), max(k, CANDIDATES))
        hits = space.images.search(query.reshape(1, -1), depth)[0]
        items = self.stores.vectors.items_for(user, [h.id for h in hits])
        ids = {item: h.id for item, h in zip(items, hits, strict=True) if item}
        clip = {item: h.score for item, h in zip(items, hits, strict=True) if item}
        beyond = [item for item in relevance if item not in clip]  # matched words, far in CLIP
        for item, vid in zip(beyond, self.stores.vectors.ids_for(user, beyond), strict=True):
            if vid is not None and space.images.contains(vid):
                ids[item] = vid
        far = [item for item in beyond if item in ids]
        if far:
            vecs = vectors_of(space.images, np.asarray([ids[i] for i in far], dtype=np.int64))
            clip.update(zip(far, (vecs @ query.astype(np.float32)).tolist(), strict=True))
        fused = fuse_photos(clip, relevance, k)
        described = self.stores.vectors.describe(user, [ids[h.item] for h in fused])
        read = [h.item for h in fused if "text" in h.matched]
        words = dict(zip(read, self.stores.vectors.ocr_words_of(user, read), strict=True))
        return [
            SearchHit(
                h.item,
                h.similarity,
                caption,
                fused=h.score,
                matched=h.matched,
                words=matching_words(words.get(h.item, ""), text),
            )  # fmt: skip
            for h, (_, caption) in zip(fused, described, strict=True)
        ]

    def search_pdf(
        self,
        user: str,
        query_vec: np.ndarray,
        query: str,
        k: int,
        mode: str = "fused",
        model: str | None = None,
    ) -> list[SearchHit]:
        """Best PDF pages: `fused` (CLIP + page text), or `text` / `image` alone."""
        self.converge(user)
        space = self.load(user)
        if space is None or len(space.pdf_pages) == 0:
            return []
        self._check_model(space, model)
        self._check_dim(user, query_vec)
        n = len(space.pdf_pages)
        clip_hits = space.pdf_pages.search(query_vec.reshape(1, -1), n)[0]
        items = self.stores.vectors.items_for(user, [h.id for h in clip_hits])
        clip_scores = {it: h.score for it, h in zip(items, clip_hits, strict=True) if it}
        if space.bm25 is None:
            texts = self.stores.queue.pdf_texts(user)
            space.bm25 = page_index(texts, self.stores.queue.meta(user, list(texts)))
            space.bm25_bytes = bm25_bytes(texts)
            self._resized(user)
            self._enforce_budget(keep=user)
        fused = rank_pages(clip_scores, space.bm25, query, mode=mode, k=k)
        return [
            SearchHit(h.item, float(h.clip_similarity or 0.0), "", h.text_score, h.score)
            for h in fused
        ]

    @staticmethod
    def _check_model(space: Space, model: str | None) -> None:
        if model is not None and space.model and model != space.model:
            raise SpaceSwitched(
                f"this space now holds model {space.model}, not {model}: search again"
            )

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
            SearchHit(item, float(score), caption, matched=("image",))
            for (item, caption), (_, score) in zip(described, pairs, strict=True)
            if item
        ]
